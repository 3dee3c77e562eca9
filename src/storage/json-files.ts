/** JSON as the project reads it from files and requests: objects checked by one rule, files that may be absent. */
import { readFile } from 'node:fs/promises';

export type JsonObject = Record<string, unknown>;

/** A JSON object (not null, not an array). */
export function isJsonObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The file's text, or null when it does not exist. */
export async function readTextIfPresent(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
}

/** The file's parsed JSON, or undefined when it does not exist; invalid JSON is an error naming the file. */
export async function readJsonIfPresent(path: string): Promise<unknown> {
  const text = await readTextIfPresent(path);
  if (text === null) return undefined;
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error(`${path} is not valid JSON (${(error as Error).message}); re-export the file`);
  }
}
