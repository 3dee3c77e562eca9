/**
 * Which sequence sits in which KV-cache row of which batch lane (ModelRunner.lanes). In every lane the decoding
 * rows come first and the rows still prefilling their prompt follow in arrival order, because a forward pass
 * feeds one contiguous range of rows: the decode pass takes the first range, a prefill pass the start of the
 * second. Every change here moves the runner's rows (cache and adapter weights) along with the sequences.
 */
import type { ModelRunner } from '../runtime/model-runner.ts';

interface Lane<T> {
  rows: T[];
  /** The first `decoding` rows decode; the rest prefill. */
  decoding: number;
}

export class BatchRows<T extends { position: number }> {
  private readonly lanes: Lane<T>[];

  constructor(private readonly runner: ModelRunner) {
    this.lanes = runner.lanes.map(() => ({ rows: [], decoding: 0 }));
  }

  get laneCount(): number {
    return this.lanes.length;
  }

  /** Every sequence holding a row. */
  get all(): T[] {
    return this.lanes.flatMap((lane) => lane.rows);
  }

  get count(): number {
    return this.lanes.reduce((sum, lane) => sum + lane.rows.length, 0);
  }

  decoding(lane: number): T[] {
    const { rows, decoding } = this.lanes[lane];
    return rows.slice(0, decoding);
  }

  prefilling(lane: number): T[] {
    const { rows, decoding } = this.lanes[lane];
    return rows.slice(decoding);
  }

  /** The row a lane's first prefilling sequence sits in. */
  firstPrefillRow(lane: number): number {
    return this.lanes[lane].decoding;
  }

  /** Gives a sequence the next free row of a lane, behind the lane's other prefilling rows. */
  addPrefilling(lane: number, sequence: T): void {
    this.lanes[lane].rows.push(sequence);
  }

  /** The lane's first `count` prefilling sequences finished their prompts and decode from now on. */
  startDecoding(lane: number, count: number): void {
    this.lanes[lane].decoding += count;
  }

  /** Removes every sequence `done` says is done, keeping both parts of each lane contiguous and in order. */
  removeWhere(done: (sequence: T) => boolean): T[] {
    const removed: T[] = [];
    this.lanes.forEach((lane, index) => {
      for (let row = lane.rows.length - 1; row >= 0; row--) {
        if (!done(lane.rows[row])) continue;
        removed.push(lane.rows[row]);
        this.remove(index, row);
      }
      this.runner.lanes[index].cache.shrinkToFit(lane.rows.length, Math.max(0, ...lane.rows.map((s) => s.position + 1)));
    });
    return removed;
  }

  /**
   * Plans each lane's cache for the positions its sequences can reach within the steps a growth takes (`reach`:
   * the most positions a sequence can need after that many steps, this one included) and for one row more than
   * it holds, and moves a planned growth on by a few layers, more when a sequence needs the larger width sooner,
   * so that neither a sequence crossing a bucket edge nor a newcomer taking the row past the last one copies the
   * whole cache in one step. A newcomer is fed in the step it arrives, so its row has to be there before it
   * comes: a lane whose rows are all held grows to the next power of two ahead of time (shrinkToFit keeps twice
   * the rows needed too).
   */
  growCaches(reach: (sequence: T, steps: number) => number): void {
    this.lanes.forEach((lane, index) => {
      const cache = this.runner.lanes[index].cache;
      // Rows taken since the last plan (a burst beyond the spare row) are fed in this step: added at once.
      cache.ensure(lane.rows.length, 1);
      const within = (steps: number) => Math.max(1, ...lane.rows.map((sequence) => reach(sequence, steps)));
      cache.planGrowth(lane.rows.length + 1, within(cache.growthSteps));
      let deadline = 1;
      while (deadline < cache.growthSteps && within(deadline) <= cache.width) deadline++;
      cache.continueGrowth(cache.layersToCompleteWithin(deadline));
    });
  }

  /** Empties every lane (after a failed pass left the batch's state unknown). */
  clear(): T[] {
    const removed = this.all;
    for (const lane of this.lanes) {
      lane.rows = [];
      lane.decoding = 0;
    }
    return removed;
  }

  /** Moves decoding sequences that will outgrow their lane at the next step into the lane for their length. */
  promote(): void {
    this.lanes.forEach((lane, index) => {
      for (let row = lane.decoding - 1; row >= 0; row--) {
        const sequence = lane.rows[row];
        const target = this.runner.laneFor(sequence.position + 1);
        if (target === index) continue;
        const targetRow = this.openDecodingRow(target);
        this.runner.moveToLane(index, row, target, targetRow, sequence.position);
        this.lanes[target].rows[targetRow] = sequence;
        this.lanes[target].decoding++;
        this.remove(index, row);
      }
    });
  }

  /** Makes room at the end of a lane's decoding rows by shifting its prefilling rows up one row. */
  private openDecodingRow(lane: number): number {
    const { rows, decoding } = this.lanes[lane];
    if (rows.length > decoding) this.runner.lanes[lane].cache.ensure(rows.length + 1, 1);
    for (let row = rows.length; row > decoding; row--) {
      this.runner.moveRow(row - 1, row, rows[row - 1].position, lane);
      rows[row] = rows[row - 1];
    }
    return decoding;
  }

  /**
   * Takes a row out of a lane. A decoding row is filled with the lane's last decoding row (order among decoding
   * rows does not matter); the prefilling rows behind then shift down one, keeping their arrival order.
   */
  private remove(lane: number, row: number): void {
    const state = this.lanes[lane];
    const { rows } = state;
    let hole = row;
    if (row < state.decoding) {
      const lastDecoding = --state.decoding;
      if (row !== lastDecoding) {
        rows[row] = rows[lastDecoding];
        this.runner.moveRow(lastDecoding, row, rows[row].position, lane);
      }
      hole = lastDecoding;
    }
    for (let next = hole + 1; next < rows.length; next++) {
      rows[next - 1] = rows[next];
      this.runner.moveRow(next, next - 1, rows[next].position, lane);
    }
    rows.pop();
  }
}
