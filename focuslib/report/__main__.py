"""`python -m focuslib.report [--smoke] [--model M] [--only NB ...]`: run the notebooks headless."""
from focuslib.report.notebooks import main

raise SystemExit(main())
