from auditkit.cli import app

app(prog_name="auditkit")
