"""Test support that other suites can use: tiny random models under real repo ids."""
