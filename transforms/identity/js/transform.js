// identity in JavaScript: emits every record unchanged (the floor of the
// JavaScript SDK's cost in the benchmarks); passes ../fixtures.
export function process(record, out) {
  out.emit(record.value);
}
