"""Test harnesses: an S3-protocol server on loopback and a fault-injecting proxy."""
