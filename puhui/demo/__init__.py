"""``puhui demo``: run (the command), setup (processes and files), report and truth (the end),
model (what they share). Each imports only downwards: run > report > truth > setup, model."""
