/**
 * Structured logs: one JSON object per line on stderr, filtered by LOG_LEVEL. Callers pass metadata only
 * (routes, statuses, tenant names, durations); request bodies, prompts, completions and keys are never logged.
 */
import type { LogLevel } from './config.ts';

export type LogFields = Record<string, string | number | boolean | undefined>;

export interface Logger {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
}

const SEVERITY: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export function createLogger(level: LogLevel, write: (line: string) => void = (line) => process.stderr.write(`${line}\n`)): Logger {
  const threshold = SEVERITY[level];
  const at = (severity: LogLevel) => (message: string, fields: LogFields = {}) => {
    if (SEVERITY[severity] < threshold) return;
    write(JSON.stringify({ time: new Date().toISOString(), level: severity, msg: message, ...fields }));
  };
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}
