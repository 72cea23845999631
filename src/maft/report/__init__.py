"""6. Reporting: one table model rendered to the console, markdown and HTML, and the static report.

- ``tables``: a table of formatted cells and its three renderers; every derived number defined once
- ``summary``: a run's tables (the console and summary.md)
- ``html``: plots (matplotlib) and the HTML report with the transcript browser; ``assets/`` its CSS and JS
"""
