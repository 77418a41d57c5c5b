"""kardlite demo web app: ``python app/demo.py [--bundle DIR] [--host 127.0.0.1] [--port 7860]``.

The app itself lives in the package (``kardlite/demo/app.py``), so ``kardlite demo`` and
``python -m kardlite.demo.app`` start it from an installed wheel too; this script is the entry from a checkout.
"""

from __future__ import annotations

from kardlite.demo.app import main

if __name__ == "__main__":
    main()
