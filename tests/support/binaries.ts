/** Debian-packaged programs some tests drive (.ci/run installs them): a clear failure when one is missing. */
import assert from 'node:assert/strict';
import { accessSync, constants } from 'node:fs';

export function debianBinary(path: string, debianPackage: string): string {
  try {
    accessSync(path, constants.X_OK);
  } catch {
    assert.fail(`${path} is missing: install the Debian package ${debianPackage} (apt-get install -y ${debianPackage}; .ci/run does)`);
  }
  return path;
}
