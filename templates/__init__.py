"""Package data: the Jinja2 templates of the launch script, read through acrnmgr.resources."""
