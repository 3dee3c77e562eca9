/** Number of elements in a tensor of `shape` (1 for a scalar's empty shape). */
export function elementCount(shape: readonly number[]): number {
  return shape.reduce((product, dim) => product * dim, 1);
}
