/**
 * Finds stop strings in generated text that arrives one token's text at a time. Text that might still turn
 * out to begin a stop string is held back until it either completes the stop (and is dropped) or stops
 * matching (and is released), so a client never sees any part of a stop string.
 */

export interface StopPushResult {
  /** Text that is now safe to send to the client. */
  emit: string;
  /** A stop string was found; everything from it onwards is discarded and no more text will be emitted. */
  stopped: boolean;
}

export class StopStringMatcher {
  private readonly stops: string[];
  /** A suffix of the text so far that is a proper prefix of some stop string, not yet emitted. */
  private held = '';
  private stopped = false;

  constructor(stops: string[]) {
    const empty = stops.findIndex((stop) => stop.length === 0);
    if (empty !== -1) {
      throw new RangeError(`stop string ${empty} is empty; an empty stop would match before any text, remove it`);
    }
    this.stops = [...stops];
  }

  push(text: string): StopPushResult {
    if (this.stopped) return { emit: '', stopped: true };
    if (this.stops.length === 0) return { emit: text, stopped: false };

    const pending = this.held + text;
    // Several stops may complete in the same chunk; the one starting earliest cuts the output shortest.
    let stopAt = -1;
    for (const stop of this.stops) {
      const at = pending.indexOf(stop);
      if (at !== -1 && (stopAt === -1 || at < stopAt)) stopAt = at;
    }
    if (stopAt !== -1) {
      this.stopped = true;
      this.held = '';
      return { emit: pending.slice(0, stopAt), stopped: true };
    }

    const holdLength = this.longestSuffixStartingAStop(pending);
    this.held = pending.slice(pending.length - holdLength);
    return { emit: pending.slice(0, pending.length - holdLength), stopped: false };
  }

  /** Releases text still held back once generation ends without a stop string completing. */
  flush(): string {
    const rest = this.held;
    this.held = '';
    return rest;
  }

  private longestSuffixStartingAStop(text: string): number {
    let longest = 0;
    for (const stop of this.stops) {
      // A suffix as long as the stop itself would have been found as a full match.
      for (let length = Math.min(text.length, stop.length - 1); length > longest; length--) {
        if (text.endsWith(stop.slice(0, length))) {
          longest = length;
          break;
        }
      }
    }
    return longest;
  }
}
