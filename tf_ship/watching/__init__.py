"""``tf-ship watch`` as a library: find the logs under a root and ship each (`Watcher`)."""
