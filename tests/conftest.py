def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a real model (still run in CI)")
