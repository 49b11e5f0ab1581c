"""Package data: the VM spec's JSON Schema (vm.schema.json), read through acrnmgr.resources."""
