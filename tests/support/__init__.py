"""Helpers of the tests: fake services, process starters, the RTC client, speech senders."""
