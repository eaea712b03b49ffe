import os
import sys

from famus.cli import main

if os.environ.get("TORCHELASTIC_ERROR_FILE"):  # under torchrun: a failing rank's error goes into its report
    from torch.distributed.elastic.multiprocessing.errors import record

    main = record(main)

sys.exit(main())
