"""Parent side of the sandbox: the bubblewrap process (``process``) and harness directories read as data (``files``)."""
