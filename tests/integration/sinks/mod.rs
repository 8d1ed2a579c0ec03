mod imap_append_dovecot;
mod imap_append_faults;
mod mda_sink;
mod smtp_faults;
mod smtp_lmtp;
mod smtp_postfix;
