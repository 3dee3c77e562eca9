/** Summaries of measured values shared by the engine and the benchmarks. */

/** The middle value (the upper of the two middle ones for an even count); undefined for no values. */
export const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
