pytest_plugins = ["shardflow.testing.plugin"]
