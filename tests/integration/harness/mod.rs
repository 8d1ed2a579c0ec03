mod dovecot_harness;
mod fake_imap_selftest;
mod oauth_harness;
