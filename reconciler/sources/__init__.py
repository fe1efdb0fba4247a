"""Where specs come from: files and directories now; git repositories later."""
