/**
 * `GET /v1/models` and `GET /v1/models/{id}`: the base model and every adapter the caller may use, shaped as
 * vLLM lists LoRA adapters (an adapter's `parent` is the base, its `root` the adapter it serves).
 */
import type { Hono } from 'hono';
import type { Principal } from '../gateway/auth.ts';
import type { AdapterRecord } from '../registry/adapter-store.ts';
import type { AdapterSummary } from '../gateway/model-resolver.ts';
import type { GatewayEnv, GatewayServices } from '../gateway/services.ts';

interface ModelCard {
  id: string;
  object: 'model';
  created: number;
  owned_by: string;
  root: string;
  parent: string | null;
  max_model_len: number;
  /** Adapters only: the PEFT family (`lora`, `dora`, `ia3`, `prompt_tuning`, `p_tuning`, `prefix_tuning`, `seq_bn`, …). */
  adapter_family?: string;
}

export function registerModelRoutes(app: Hono<GatewayEnv>, services: GatewayServices): void {
  const { models } = services;
  const baseCard = (): ModelCard => ({
    id: models.baseName,
    object: 'model',
    created: services.startedAt,
    owned_by: 'system',
    root: models.baseName,
    parent: null,
    max_model_len: services.engine.info.maxPositions,
  });
  const adapterCard = (record: AdapterRecord<AdapterSummary>, id: string): ModelCard => ({
    id,
    object: 'model',
    created: Math.floor(Date.parse(record.publishedAt) / 1000),
    owned_by: record.tenant,
    root: record.id,
    parent: models.baseName,
    max_model_len: services.engine.info.maxPositions,
    adapter_family: record.summary.family,
  });

  app.get('/v1/models', async (c) => {
    const principal: Principal = c.get('principal');
    const adapters = (await models.visibleAdapters(principal)).map((record) => adapterCard(record, models.modelId(record)));
    return c.json({ object: 'list', data: [baseCard(), ...adapters] });
  });

  // Adapter ids contain a slash (`base+tenant/adapter@2`), so the id is the rest of the path, which the router has
  // already percent-decoded (decoding it again would turn a literal `%` into an error).
  app.get('/v1/models/:id{.+}', async (c) => {
    const id = c.req.param('id');
    const resolved = await models.resolve(c.get('principal'), id);
    return c.json(resolved.adapter ? adapterCard(resolved.adapter, id) : baseCard());
  });
}
