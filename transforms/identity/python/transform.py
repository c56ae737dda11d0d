"""identity in Python: emits every record unchanged (the floor of the Python
SDK's cost in the benchmarks); passes ../fixtures."""


def process(record, out):
    out.emit(record.value)
