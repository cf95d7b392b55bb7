"""The storage tests use the shared real local servers of tests/conftest.py: `http_server` (routes each test
programs, every request recorded) and `fake_hub` (the Hugging Face Hub API, which cannot be reached here)."""
