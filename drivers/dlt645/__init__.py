"""DL/T 645-2007 driver: electricity meters on a shared RS-485 line (see README.md)."""
