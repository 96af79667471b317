"""``fleetkit demo`` and the CTR example it runs (shared by ``examples/ctr``, the tests and
the benchmarks): synthetic click data (``ctr_data``), the wide&deep model and the tests'
per-slot one (``ctr_model``), training pieces (``ctr_train``), the click-log
``DataGenerator`` (``reader``), the job script each launched process runs (``job``) and
the demo driver (``run``)."""
