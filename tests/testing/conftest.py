# pytester runs a user's test file that uses the plugin, as pytest would.
pytest_plugins = ["pytester"]
