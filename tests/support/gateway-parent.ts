/**
 * A process that starts a gateway (as the soak harness does, through loadtest/gateway-process.ts), prints the
 * gateway's pid and stays: tests end it to check that its gateway does not outlive it. Argument: a scratch dir.
 */
import { join } from 'node:path';
import { spawnGateway } from './spawned-gateway.ts';

const [dir] = process.argv.slice(2);
const gateway = await spawnGateway(dir, join(dir, 'adapters'));
process.stdout.write(`${gateway.pid}\n`);
