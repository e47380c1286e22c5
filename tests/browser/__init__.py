"Real-browser notebook tests: JupyterLab + Playwright (Debian chromium). Helpers live in `harness`."
