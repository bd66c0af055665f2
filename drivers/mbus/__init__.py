"""EN 13757-3 M-Bus heat meters (wired M-Bus, 2400 8E1) read over a shared line."""
