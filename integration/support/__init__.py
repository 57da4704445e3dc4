"""Helpers shared by the container test suites under integration/.

Modules that need no Docker engine (yamlutil, configs, echo, wait, httpclient, wheel) are unit
tested in tests/test_integration_support.py; containers.py drives the engine through
testcontainers and the docker SDK. build.py (the gateway image build) belongs to the image suite.
"""
