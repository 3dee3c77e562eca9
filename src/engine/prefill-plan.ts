/**
 * Which prompt tokens the next engine step prefills, under a per-step token budget (stall-free batching, as in
 * Sarathi-Serve and vLLM's chunked prefill): decode rows advance every step, and prefill gets at most `budget`
 * tokens of work beside them, so a burst of long prompts delays running streams by a bounded slice per step
 * instead of by whole prompts.
 *
 * One prefill pass feeds every row it takes the same number of token positions (shorter rows are padded, and the
 * padding costs as much as real tokens), so the budget bounds rows × width. Prompts are taken in arrival order:
 * a prompt longer than the budget is fed alone, one budget-wide chunk per step; otherwise the next prompts join
 * while rows × (their longest remaining part) stays within the budget. Every row of a pass but a lone first one
 * thus finishes its prompt in it, so the rows that finish are always the first rows of the pass, and earlier
 * arrivals never wait behind later ones.
 */

export interface PrefillPass {
  /** How many of the waiting prompts, from the first, this pass feeds. */
  rows: number;
  /** Token positions fed per row: row i feeds min(remaining[i], width) tokens. */
  width: number;
}

/** `remaining`: prompt tokens not yet prefilled, per prefilling row in arrival order (each ≥ 1). */
export function planPrefillPass(remaining: readonly number[], budget: number): PrefillPass | null {
  if (remaining.length === 0) return null;
  if (remaining[0] >= budget) return { rows: 1, width: budget };
  let rows = 1;
  let width = remaining[0];
  for (; rows < remaining.length; rows++) {
    const wider = Math.max(width, remaining[rows]);
    if ((rows + 1) * wider > budget) break;
    width = wider;
  }
  return { rows, width };
}
