import { describe, test } from 'node:test';
import { fileParserTargets } from '../fuzz/file-parsers.ts';
import { startFuzzedGateway } from '../fuzz/fuzzed-gateway.ts';
import { httpRouteTargets } from '../fuzz/http-routes.ts';
import { parsePeftConfig } from '../src/adapters/peft-config.ts';
import assert from 'node:assert/strict';
import { STORIES_GGUF, STORIES_HF_DIR } from './support/models.ts';

/** A fixed seed and few inputs: the same inputs on every run. `npm run fuzz -- --runs N` explores further. */
const RUN = { seed: 20261202, numRuns: 25 };

describe('file parsers refuse generated garbage with their own errors', async () => {
  for (const target of await fileParserTargets(STORIES_HF_DIR, STORIES_GGUF)) test(target.name, () => target.run(RUN));
});

test('routes answer generated bodies with success or an OpenAI error, never a 5xx', async (t) => {
  const gateway = await startFuzzedGateway();
  try {
    for (const target of httpRouteTargets(gateway)) {
      await t.test(target.name, async () => {
        await target.run({ ...RUN, numRuns: 15 });
        gateway.assertNoUnexpectedErrors();
      });
    }
  } finally {
    await gateway.stop();
  }
});

test('a regular expression in adapter_config.json that could backtrack for minutes is refused at once', () => {
  for (const pattern of ['(.*.*)*z', '(a+)+$', '(q_proj|q_proj)*x', '((v_proj)?)+']) {
    assert.throws(
      () => parsePeftConfig({ peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: pattern }),
      (error: Error) => error.name === 'AdapterError' && /exponential time/.test(error.message),
      pattern,
    );
  }
  // What PEFT users write still works.
  assert.equal(parsePeftConfig({ peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: '.*\\.(q_proj|v_proj)' }).targetModules.kind, 'regex');
});
