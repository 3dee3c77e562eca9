/** OpenAI's cursor pages: `limit` items after the item whose id is `after`, and whether more follow. */
import { invalidValue } from './request-fields.ts';

export const DEFAULT_PAGE_SIZE = 20;

export function listPage<T extends { id: string }>(items: T[], after: string | undefined, limit: string | undefined, maxLimit = 100) {
  let size = DEFAULT_PAGE_SIZE;
  if (limit !== undefined) {
    size = /^\d+$/.test(limit) ? Number(limit) : NaN;
    if (!Number.isSafeInteger(size) || size < 1 || size > maxLimit) throw invalidValue('limit', `an integer from 1 to ${maxLimit}`, limit);
  }
  // An unknown cursor (say, a deleted item) starts from the beginning rather than failing the whole listing.
  const start = after === undefined ? 0 : items.findIndex((item) => item.id === after) + 1;
  const data = items.slice(start, start + size);
  return {
    object: 'list' as const,
    data,
    has_more: start + size < items.length,
    first_id: data[0]?.id ?? null,
    last_id: data.at(-1)?.id ?? null,
  };
}
