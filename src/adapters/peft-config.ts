/**
 * Hugging Face PEFT `adapter_config.json` for LoRA (and DoRA): parsing, refusal of options this gateway cannot
 * serve, and PEFT's rules for which modules of a Llama model an adapter touches and with what rank and scale. The
 * field readers and module targeting are shared with the other PEFT families (ia3.ts, prompt-learning.ts).
 *
 * Module names are those of `LlamaForCausalLM.named_modules()` (`model.layers.3.self_attn.q_proj`), the names PEFT
 * matches `target_modules`, `rank_pattern` and `alpha_pattern` against.
 */
import { LORA_TARGET_MODULES, type LlamaConfig, type LoraTargetModule } from '../model/types.ts';
import { AdapterError } from './adapter-error.ts';
import { isJsonObject, type JsonObject } from '../storage/json-files.ts';

export { ADAPTER_CONFIG_FILE } from './adapter-files.ts';
import { ADAPTER_CONFIG_FILE } from './adapter-files.ts';

/** PEFT's two spellings of a module set: names (exact or as a dotted suffix), or one regex over full names. */
export type ModuleSelector = { kind: 'names'; names: string[] } | { kind: 'regex'; pattern: string };

export interface ParsedPeftConfig {
  r: number;
  loraAlpha: number;
  /** Rank-stabilised LoRA: scale is alpha/sqrt(r) instead of alpha/r. */
  useRslora: boolean;
  /** DoRA: each output row of W + scale·B·A is renormalised to a learned magnitude. */
  useDora: boolean;
  /** Module-name pattern → rank; the first matching key wins, else `r`. */
  rankPattern: Record<string, number>;
  /** Module-name pattern → alpha; the first matching key wins, else `loraAlpha`. */
  alphaPattern: Record<string, number>;
  targetModules: ModuleSelector;
  excludeModules: ModuleSelector | null;
  /** Layer indices to adapt (applies to names matched as a suffix, as in PEFT); null means all layers. */
  layersToTransform: number[] | null;
  /** Regex fragments naming the layer list (`layers` for Llama); null means any. */
  layersPattern: string[] | null;
  /** Informational: what the adapter was trained on. Compatibility is decided by shapes, not by this name. */
  baseModelNameOrPath: string | null;
}

/** One adapted projection of the base model, as the config decides it. */
export interface LoraModulePlan {
  layer: number;
  module: LoraTargetModule;
  /** Full module name, e.g. `model.layers.3.self_attn.q_proj`. */
  name: string;
  rank: number;
  alpha: number;
  scale: number;
}

const MODULE_PARENT: Record<LoraTargetModule, 'self_attn' | 'mlp'> = {
  q_proj: 'self_attn',
  k_proj: 'self_attn',
  v_proj: 'self_attn',
  o_proj: 'self_attn',
  gate_proj: 'mlp',
  up_proj: 'mlp',
  down_proj: 'mlp',
};

/** Llama modules PEFT could adapt that this gateway cannot: they are outside the per-layer projections. */
const UNSUPPORTED_LLAMA_TARGETS = { embed_tokens: 'model.embed_tokens', lm_head: 'lm_head' };

const TARGET_LIST = LORA_TARGET_MODULES.join(', ');

/** Init methods that rewrite the base weights when the adapter is created, so the adapter only fits that rewritten base. */
const BASE_REWRITING_INITS = ['pissa', 'olora', 'loftq', 'corda'];
/** Init methods that only choose the starting A and B (EVA sets A from activation statistics); the base stays as it was. */
const DELTA_ONLY_INITS: unknown[] = [true, false, 'gaussian', 'eva'];

export function loraModuleName(layer: number, module: LoraTargetModule): string {
  return `model.layers.${layer}.${MODULE_PARENT[module]}.${module}`;
}

export function isLoraTargetModule(name: string): name is LoraTargetModule {
  return (LORA_TARGET_MODULES as readonly string[]).includes(name);
}



export function describe(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

export function invalid(message: string): never {
  throw new AdapterError('invalid_config', `${ADAPTER_CONFIG_FILE}: ${message}`);
}

export function isUnset(value: unknown): boolean {
  return value === undefined || value === null;
}

export function isEmpty(value: unknown): boolean {
  if (isUnset(value)) return true;
  if (Array.isArray(value)) return value.length === 0;
  return isJsonObject(value) && Object.keys(value).length === 0;
}

/**
 * Options that make an adapter more than a low-rank delta on the frozen base. Serving them would need a different
 * base computation per adapter, which defeats sharing one base across tenants.
 */
const BASE_CHANGING_OPTIONS: { field: string; allowed: (value: unknown) => boolean; expected: string; why: string }[] = [
  { field: 'modules_to_save', allowed: isEmpty, expected: 'null', why: 'it replaces whole base modules with trained copies' },
  { field: 'layer_replication', allowed: isEmpty, expected: 'null', why: "it duplicates base layers, changing the model's depth" },
  { field: 'bias', allowed: (v) => isUnset(v) || v === 'none', expected: '"none"', why: 'it trains the base biases' },
  { field: 'fan_in_fan_out', allowed: (v) => isUnset(v) || v === false, expected: 'false', why: 'it is for transposed Conv1D weights, which Llama does not have' },
  { field: 'lora_bias', allowed: (v) => isUnset(v) || v === false, expected: 'false', why: 'lora_B then carries a bias vector' },
  { field: 'target_parameters', allowed: isEmpty, expected: 'null', why: 'it adapts raw parameters rather than linear projections' },
  { field: 'trainable_token_indices', allowed: isEmpty, expected: 'null', why: 'it retrains rows of the token embedding' },
  { field: 'use_qalora', allowed: (v) => isUnset(v) || v === false, expected: 'false', why: 'QA-LoRA pools the adapter input, a different computation' },
  { field: 'alora_invocation_tokens', allowed: isEmpty, expected: 'null', why: 'activated LoRA switches on mid-sequence' },
];

function refuseBaseChangingOptions(json: JsonObject): void {
  for (const { field, allowed, expected, why } of BASE_CHANGING_OPTIONS) {
    if (allowed(json[field])) continue;
    throw new AdapterError(
      'unsupported_feature',
      `${ADAPTER_CONFIG_FILE}: "${field}": ${describe(json[field])} is not supported (${why}); only adapters with "${field}": ${expected} can be served`,
    );
  }
  const init = json.init_lora_weights;
  if (isUnset(init) || DELTA_ONLY_INITS.includes(init)) return;
  const rewritesBase = typeof init === 'string' && BASE_REWRITING_INITS.some((method) => init.toLowerCase().startsWith(method));
  throw new AdapterError(
    'unsupported_feature',
    rewritesBase
      ? `${ADAPTER_CONFIG_FILE}: "init_lora_weights": ${describe(init)} is not supported: that initialisation rewrites the base weights, so the adapter only fits the rewritten base; convert it to a plain LoRA delta against the original base first`
      : `${ADAPTER_CONFIG_FILE}: "init_lora_weights": ${describe(init)} is not supported; expected one of ${DELTA_ONLY_INITS.map((value) => JSON.stringify(value)).join(', ')}`,
  );
}

function checkAdapterType(json: JsonObject): void {
  if (json.peft_type !== 'LORA') invalid(`"peft_type" must be "LORA" for a LoRA adapter, got ${describe(json.peft_type)}`);
  checkTaskType(json);
}

/** Every PEFT family: the gateway serves causal language models only. */
export function checkTaskType(json: JsonObject): void {
  const taskType = json.task_type;
  if (!isUnset(taskType) && taskType !== 'CAUSAL_LM') {
    throw new AdapterError(
      'unsupported_feature',
      `${ADAPTER_CONFIG_FILE}: "task_type": ${describe(taskType)} is not supported; the gateway serves causal language models, so expected "CAUSAL_LM" or no task_type`,
    );
  }
}

export function positiveInteger(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0) {
    invalid(`"${field}" must be a positive integer, got ${describe(value)}`);
  }
  return value;
}

export function finiteNumber(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) invalid(`"${field}" must be a number, got ${describe(value)}`);
  return value;
}

export function optionalBoolean(value: unknown, field: string): boolean {
  if (isUnset(value)) return false;
  if (typeof value !== 'boolean') invalid(`"${field}" must be true or false, got ${describe(value)}`);
  return value;
}

/** PEFT patterns are Python regexes; the common subset means the same in JavaScript. */
function compileRegex(source: string, field: string, wrap: (source: string) => string): RegExp {
  const backtracking = unboundedRepetitionOfChoice(source);
  if (backtracking) {
    invalid(
      `"${field}" holds ${describe(source)}, whose ${backtracking} can take exponential time to match; ` +
        'list the module names, or use a pattern without a repeated group that itself repeats or alternates',
    );
  }
  try {
    return new RegExp(wrap(source));
  } catch (error) {
    return invalid(`"${field}" holds ${describe(source)}, which is not a valid regular expression (${(error as Error).message})`);
  }
}

/**
 * Patterns come from uploaded files and JavaScript's regex engine backtracks, so a group that repeats without
 * bound and itself repeats or alternates (`(a+)+`, `(.*.*)*`, `(a|ab)*`) could hold the HTTP thread for minutes
 * on a module name. Such a group is refused; module-name patterns never need one. Returns the offending group,
 * or null.
 */
function unboundedRepetitionOfChoice(source: string): string | null {
  const open: { start: number; ambiguous: boolean }[] = [];
  let ambiguous = false;
  for (let i = 0; i < source.length; i++) {
    const char = source[i];
    if (char === '\\') {
      i++;
    } else if (char === '[') {
      while (i < source.length && source[i] !== ']') i += source[i] === '\\' ? 2 : 1;
    } else if (char === '(') {
      open.push({ start: i, ambiguous });
      ambiguous = false;
    } else if (char === '|' || char === '*' || char === '+' || char === '{' || (char === '?' && source[i - 1] !== '(')) {
      ambiguous = true;
    } else if (char === ')' && open.length > 0) {
      const group = open.pop()!;
      const next = source[i + 1];
      if (ambiguous && (next === '*' || next === '+' || next === '{')) return `group ${source.slice(group.start, i + 2)}`;
      ambiguous ||= group.ambiguous;
    }
  }
  return null;
}

const fullMatch = (source: string) => `^(?:${source})$`;
/** PEFT's rank/alpha pattern rule: the key matches the whole name or a dotted suffix of it. */
const suffixPatternMatch = (source: string) => `^(?:.*\\.)?(?:${source})$`;
/** PEFT's layer-index rule: `<anything>.<layers_pattern>.<index>.` at the start of the name. */
const layerIndexMatch = (source: string) => `^.*\\.${source}\\.(\\d+)\\.`;

function patternMap(value: unknown, field: string, readValue: (v: unknown, field: string) => number): Record<string, number> {
  if (isUnset(value)) return {};
  if (!isJsonObject(value)) invalid(`"${field}" must be an object mapping module-name patterns to values, got ${describe(value)}`);
  const parsed: Record<string, number> = {};
  for (const [key, entry] of Object.entries(value)) {
    compileRegex(key, field, suffixPatternMatch);
    parsed[key] = readValue(entry, `${field}.${key}`);
  }
  return parsed;
}

export function moduleSelector(value: unknown, field: string): ModuleSelector {
  if (typeof value === 'string') {
    compileRegex(value, field, fullMatch);
    return { kind: 'regex', pattern: value };
  }
  if (!Array.isArray(value) || !value.every((name) => typeof name === 'string')) {
    invalid(`"${field}" must be a list of module names or a regex string, got ${describe(value)}`);
  }
  return { kind: 'names', names: value as string[] };
}

export function parseTargetModules(value: unknown): ModuleSelector {
  if (isUnset(value)) {
    invalid(`"target_modules" is missing; list the adapted projections (e.g. ["q_proj", "v_proj"]) or give "all-linear"`);
  }
  if (typeof value === 'string' && value.toLowerCase() === 'all-linear') {
    return { kind: 'names', names: [...LORA_TARGET_MODULES] };
  }
  const selector = moduleSelector(value, 'target_modules');
  if (selector.kind === 'regex') {
    const regex = new RegExp(fullMatch(selector.pattern));
    for (const [short, fullName] of Object.entries(UNSUPPORTED_LLAMA_TARGETS)) {
      if (regex.test(fullName)) refuseTarget(short, `regex ${describe(selector.pattern)} matches ${fullName}`);
    }
    return selector;
  }
  if (selector.names.length === 0) invalid(`"target_modules" is empty; list the adapted projections (${TARGET_LIST})`);
  for (const name of selector.names) {
    const last = name.slice(name.lastIndexOf('.') + 1);
    if (last in UNSUPPORTED_LLAMA_TARGETS) refuseTarget(last, `"${name}" is listed`);
    if (!isLoraTargetModule(last)) {
      throw new AdapterError(
        'incompatible_base',
        `${ADAPTER_CONFIG_FILE}: target module "${name}" is not a projection of a Llama model; targets must be ${TARGET_LIST}`,
      );
    }
  }
  return selector;
}

function refuseTarget(module: string, how: string): never {
  throw new AdapterError(
    'unsupported_feature',
    `${ADAPTER_CONFIG_FILE}: "target_modules" includes ${module} (${how}); adapting ${module} is not supported, only ${TARGET_LIST}`,
  );
}

function layersToTransform(value: unknown): number[] | null {
  if (isUnset(value)) return null;
  const list = typeof value === 'number' ? [value] : value;
  if (!Array.isArray(list) || !list.every((index) => typeof index === 'number' && Number.isInteger(index) && index >= 0)) {
    invalid(`"layers_to_transform" must be a layer index or a list of layer indices, got ${describe(value)}`);
  }
  // PEFT treats an empty list as "no restriction".
  return list.length === 0 ? null : (list as number[]);
}

function layersPattern(value: unknown): string[] | null {
  // PEFT treats an empty pattern as "any layer list".
  if (isUnset(value) || value === '') return null;
  const list = typeof value === 'string' ? [value] : value;
  if (!Array.isArray(list) || !list.every((pattern) => typeof pattern === 'string')) {
    invalid(`"layers_pattern" must be a string or a list of strings, got ${describe(value)}`);
  }
  for (const pattern of list as string[]) compileRegex(pattern, 'layers_pattern', layerIndexMatch);
  return list.length === 0 ? null : (list as string[]);
}

/** Validates a parsed `adapter_config.json`; throws AdapterError naming the field at fault. */
export function parsePeftConfig(json: unknown): ParsedPeftConfig {
  if (!isJsonObject(json)) invalid(`expected a JSON object, got ${describe(json)}`);
  checkAdapterType(json);
  refuseBaseChangingOptions(json);

  const config: ParsedPeftConfig = {
    r: positiveInteger(json.r, 'r'),
    loraAlpha: finiteNumber(json.lora_alpha, 'lora_alpha'),
    useRslora: optionalBoolean(json.use_rslora, 'use_rslora'),
    useDora: optionalBoolean(json.use_dora, 'use_dora'),
    rankPattern: patternMap(json.rank_pattern, 'rank_pattern', positiveInteger),
    alphaPattern: patternMap(json.alpha_pattern, 'alpha_pattern', finiteNumber),
    targetModules: parseTargetModules(json.target_modules),
    excludeModules: isEmpty(json.exclude_modules) ? null : moduleSelector(json.exclude_modules, 'exclude_modules'),
    layersToTransform: layersToTransform(json.layers_to_transform),
    layersPattern: layersPattern(json.layers_pattern),
    baseModelNameOrPath: typeof json.base_model_name_or_path === 'string' ? json.base_model_name_or_path : null,
  };
  // The same combinations PEFT's LoraConfig rejects.
  if (config.targetModules.kind === 'regex' && (config.layersToTransform || config.layersPattern)) {
    invalid('"layers_to_transform" and "layers_pattern" cannot be combined with a regex "target_modules"; list the module names instead');
  }
  if (config.layersPattern && !config.layersToTransform) {
    invalid('"layers_pattern" is set but "layers_to_transform" is not; give the layer indices to adapt');
  }
  return config;
}

function firstPatternValue(patterns: Record<string, number>, moduleName: string): number | undefined {
  for (const [key, value] of Object.entries(patterns)) {
    if (new RegExp(suffixPatternMatch(key)).test(moduleName)) return value;
  }
  return undefined;
}

/** Rank, alpha and scale of one module under PEFT's rules (pattern keys first, then the defaults). */
export function loraModuleSettings(config: ParsedPeftConfig, moduleName: string): { rank: number; alpha: number; scale: number } {
  const rank = firstPatternValue(config.rankPattern, moduleName) ?? config.r;
  const alpha = firstPatternValue(config.alphaPattern, moduleName) ?? config.loraAlpha;
  return { rank, alpha, scale: config.useRslora ? alpha / Math.sqrt(rank) : alpha / rank };
}

function selectorMatches(selector: ModuleSelector, name: string): 'exact' | 'suffix' | false {
  if (selector.kind === 'regex') return new RegExp(fullMatch(selector.pattern)).test(name) ? 'exact' : false;
  if (selector.names.includes(name)) return 'exact';
  return selector.names.some((entry) => name.endsWith(`.${entry}`)) ? 'suffix' : false;
}

/** Which modules an adapter adapts: PEFT's target_modules, exclude_modules and layer restrictions. */
export type ModuleSelection = Pick<ParsedPeftConfig, 'targetModules' | 'excludeModules' | 'layersToTransform' | 'layersPattern'>;

function layerIndexOf(config: ModuleSelection, name: string): number | null {
  for (const pattern of config.layersPattern ?? ['[^.]*']) {
    const match = new RegExp(layerIndexMatch(pattern)).exec(name);
    if (match) return Number(match[1]);
  }
  return null;
}

/** PEFT's `check_target_module_exists`: exclusions first; layer restrictions apply only to suffix matches. */
export function isTargeted(config: ModuleSelection, name: string): boolean {
  if (config.excludeModules && selectorMatches(config.excludeModules, name)) return false;
  const match = selectorMatches(config.targetModules, name);
  if (match !== 'suffix' || !config.layersToTransform) return match !== false;
  const layer = layerIndexOf(config, name);
  return layer !== null && config.layersToTransform.includes(layer);
}

/**
 * Every projection of `base` the adapter adapts, in layer order then LORA_TARGET_MODULES order. Throws
 * 'incompatible_base' when the config names layers or modules the base does not have, or adapts nothing.
 */
export function planLoraModules(config: ParsedPeftConfig, base: LlamaConfig): LoraModulePlan[] {
  return planTargetedModules(config, base).map((target) => ({ ...target, ...loraModuleSettings(config, target.name) }));
}

/** The projections of `base` a module selection adapts, in layer then LORA_TARGET_MODULES order (see planLoraModules). */
export function planTargetedModules(config: ModuleSelection, base: LlamaConfig): { layer: number; module: LoraTargetModule; name: string }[] {
  const candidates: { layer: number; module: LoraTargetModule; name: string }[] = [];
  for (let layer = 0; layer < base.numLayers; layer++) {
    for (const module of LORA_TARGET_MODULES) candidates.push({ layer, module, name: loraModuleName(layer, module) });
  }
  const incompatible = (message: string): never => {
    throw new AdapterError('incompatible_base', `${ADAPTER_CONFIG_FILE}: ${message}`);
  };

  const outOfRange = config.layersToTransform?.filter((layer) => layer >= base.numLayers) ?? [];
  if (outOfRange.length > 0) {
    incompatible(`"layers_to_transform" names layer ${outOfRange.join(', ')}, but the base model has ${base.numLayers} layers (0-${base.numLayers - 1})`);
  }
  if (config.targetModules.kind === 'names') {
    for (const entry of config.targetModules.names) {
      if (!candidates.some(({ name }) => name === entry || name.endsWith(`.${entry}`))) {
        incompatible(`target module "${entry}" does not exist in the base model (${base.numLayers} layers; names look like ${loraModuleName(0, 'q_proj')})`);
      }
    }
  }

  const plans = candidates.filter(({ name }) => isTargeted(config, name));
  if (plans.length === 0) incompatible('the adapter targets no projection of the base model; check "target_modules", "exclude_modules" and "layers_to_transform"');
  return plans;
}
