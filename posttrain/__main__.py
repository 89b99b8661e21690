from posttrain.cli import app

app()
