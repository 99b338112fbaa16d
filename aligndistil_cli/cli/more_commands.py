from aligndistil_cli.cli.app import app  # noqa: F401

