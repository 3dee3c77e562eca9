/**
 * The part of Grafana's dashboard JSON model (schemaVersion 39) the shipped dashboards use, as typed objects, and
 * the few builders that keep every panel on the same conventions: the `$datasource` variable instead of a fixed
 * datasource uid, a unit and a description on every panel, `$__rate_interval` in rates.
 */

/** Every panel and query points at the dashboard's datasource variable, never at a uid of one installation. */
export const DATASOURCE = { type: 'prometheus', uid: '${datasource}' } as const;

export interface GrafanaTarget {
  refId: string;
  datasource: typeof DATASOURCE;
  expr: string;
  legendFormat?: string;
  /** Tables of current values (`vllm:lora_requests_info`) read one instant, not a range. */
  instant?: boolean;
  range?: boolean;
  format?: 'time_series' | 'table';
}

export interface GrafanaPanel {
  id: number;
  type: 'timeseries' | 'stat' | 'table' | 'bargauge';
  title: string;
  description: string;
  datasource: typeof DATASOURCE;
  gridPos: { x: number; y: number; w: number; h: number };
  targets: GrafanaTarget[];
  fieldConfig: { defaults: Record<string, unknown>; overrides: unknown[] };
  options: Record<string, unknown>;
  transformations?: { id: string; options: Record<string, unknown> }[];
}

export interface GrafanaVariable {
  name: string;
  label: string;
  type: 'datasource' | 'query';
  description: string;
  hide: 0;
  query: string | { query: string; refId: string };
  definition?: string;
  datasource?: typeof DATASOURCE;
  refresh: 1 | 2;
  includeAll: boolean;
  multi: boolean;
  allValue?: string;
  current: Record<string, never>;
  options: [];
  regex: string;
  sort: 0 | 1;
}

export interface GrafanaDashboard {
  uid: string;
  title: string;
  description: string;
  tags: string[];
  timezone: 'browser';
  editable: boolean;
  graphTooltip: 1;
  refresh: string;
  schemaVersion: 39;
  version: 1;
  time: { from: string; to: string };
  templating: { list: GrafanaVariable[] };
  annotations: { list: [] };
  panels: GrafanaPanel[];
}

/** What a panel shows, before layout and ids are assigned. */
export interface PanelSpec {
  title: string;
  description: string;
  /** A Grafana unit id (`reqps`, `s`, `percentunit`, `bytes`) or `suffix:<text>`. */
  unit: string;
  queries: { expr: string; legend?: string }[];
  type?: 'timeseries' | 'stat' | 'bargauge';
  /** Width in grid columns (24 across); panels fill rows left to right. */
  width?: number;
  height?: number;
  min?: number;
  max?: number;
  stacked?: boolean;
}

export interface TableSpec {
  title: string;
  description: string;
  unit: string;
  /** One instant query, one row per series; its labels become the columns. */
  expr: string;
  /** Columns to hide, and the header for each shown label. */
  hide: string[];
  rename: Record<string, string>;
  width?: number;
  height?: number;
}

export type Item = { kind: 'panel'; spec: PanelSpec } | { kind: 'table'; spec: TableSpec };

export const panel = (spec: PanelSpec): Item => ({ kind: 'panel', spec });
export const table = (spec: TableSpec): Item => ({ kind: 'table', spec });

/** Filter on the dashboard's variables, for series that carry `model_name` (the `vllm:` ones) and for the rest. */
export const MODEL_SELECTOR = 'model_name=~"$model_name", instance=~"$instance"';
export const INSTANCE_SELECTOR = 'instance=~"$instance"';

const REF_IDS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ';

function panelJson(spec: PanelSpec, id: number, gridPos: GrafanaPanel['gridPos']): GrafanaPanel {
  const type = spec.type ?? 'timeseries';
  const defaults: Record<string, unknown> = { unit: spec.unit };
  if (spec.min !== undefined) defaults.min = spec.min;
  if (spec.max !== undefined) defaults.max = spec.max;
  if (type === 'timeseries') {
    defaults.custom = {
      drawStyle: 'line',
      lineWidth: 1,
      fillOpacity: spec.stacked ? 30 : 10,
      showPoints: 'never',
      stacking: { mode: spec.stacked ? 'normal' : 'none', group: 'A' },
    };
  }
  const options: Record<string, unknown> =
    type === 'timeseries'
      ? { legend: { displayMode: 'list', placement: 'bottom', showLegend: true }, tooltip: { mode: 'multi', sort: 'desc' } }
      : { reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false }, orientation: 'horizontal' };
  return {
    id,
    type,
    title: spec.title,
    description: spec.description,
    datasource: DATASOURCE,
    gridPos,
    targets: spec.queries.map((query, index) => ({
      refId: REF_IDS[index],
      datasource: DATASOURCE,
      expr: query.expr,
      ...(query.legend === undefined ? {} : { legendFormat: query.legend }),
      range: true,
    })),
    fieldConfig: { defaults, overrides: [] },
    options,
  };
}

function tableJson(spec: TableSpec, id: number, gridPos: GrafanaPanel['gridPos']): GrafanaPanel {
  return {
    id,
    type: 'table',
    title: spec.title,
    description: spec.description,
    datasource: DATASOURCE,
    gridPos,
    targets: [{ refId: 'A', datasource: DATASOURCE, expr: spec.expr, instant: true, range: false, format: 'table' }],
    fieldConfig: { defaults: { unit: spec.unit }, overrides: [] },
    options: { showHeader: true, cellHeight: 'sm' },
    transformations: [
      {
        id: 'organize',
        options: { excludeByName: Object.fromEntries(spec.hide.map((name) => [name, true])), renameByName: spec.rename },
      },
    ],
  };
}

function queryVariable(name: string, label: string, description: string, definition: string): GrafanaVariable {
  return {
    name,
    label,
    type: 'query',
    description,
    hide: 0,
    datasource: DATASOURCE,
    definition,
    query: { query: definition, refId: 'PrometheusVariableQueryEditor-VariableQuery' },
    refresh: 2,
    includeAll: true,
    multi: true,
    allValue: '.*',
    current: {},
    options: [],
    regex: '',
    sort: 1,
  };
}

export interface DashboardSpec {
  uid: string;
  title: string;
  description: string;
  tags: string[];
  /** The series whose labels list the values of `instance`, and of `model_name` when it carries that label. */
  variableSource: { metric: string; hasModelName: boolean };
  items: Item[];
}

/** Lays the items out in rows of 24 columns and adds the datasource, model_name and instance variables. */
export function dashboard(spec: DashboardSpec): GrafanaDashboard {
  const panels: GrafanaPanel[] = [];
  let x = 0;
  let y = 0;
  let rowHeight = 0;
  spec.items.forEach((item, index) => {
    const w = item.spec.width ?? 12;
    const h = item.spec.height ?? 8;
    if (x + w > 24) {
      x = 0;
      y += rowHeight;
      rowHeight = 0;
    }
    const gridPos = { x, y, w, h };
    panels.push(item.kind === 'panel' ? panelJson(item.spec, index + 1, gridPos) : tableJson(item.spec, index + 1, gridPos));
    x += w;
    rowHeight = Math.max(rowHeight, h);
  });
  const { metric, hasModelName } = spec.variableSource;
  const modelFilter = hasModelName ? '{model_name=~"$model_name"}' : '';
  return {
    uid: spec.uid,
    title: spec.title,
    description: spec.description,
    tags: spec.tags,
    timezone: 'browser',
    editable: false,
    graphTooltip: 1,
    refresh: '30s',
    schemaVersion: 39,
    version: 1,
    time: { from: 'now-1h', to: 'now' },
    templating: {
      list: [
        {
          name: 'datasource',
          label: 'Data source',
          type: 'datasource',
          description: 'The Prometheus that scrapes the gateway.',
          hide: 0,
          query: 'prometheus',
          refresh: 1,
          includeAll: false,
          multi: false,
          current: {},
          options: [],
          regex: '',
          sort: 0,
        },
        ...(hasModelName
          ? [
              queryVariable(
                'model_name',
                'Model',
                'Served base model (the model_name label of the vllm: series).',
                `label_values(${metric}, model_name)`,
              ),
            ]
          : []),
        queryVariable('instance', 'Instance', 'Scraped gateway or trainer pods.', `label_values(${metric}${modelFilter}, instance)`),
      ],
    },
    annotations: { list: [] },
    panels,
  };
}

/**
 * Per-second rate of a counter, by default over Grafana's `$__rate_interval` (at least four scrape intervals);
 * `$__range`, the dashboard's whole time range, suits rare events.
 */
export function rate(series: string, selector: string, range: '$__rate_interval' | '$__range' = '$__rate_interval'): string {
  return `rate(${series}{${selector}}[${range}])`;
}

/** `histogram_quantile` over a rate of `<histogram>_bucket`, summed over the given labels. */
export function quantile(q: number, histogram: string, selector: string, by: string[] = [], range: Parameters<typeof rate>[2] = '$__rate_interval'): string {
  return `histogram_quantile(${q}, sum by (${['le', ...by].join(', ')}) (${rate(`${histogram}_bucket`, selector, range)}))`;
}

/**
 * The `n` largest series of `sum by (label) (inner)`, and the rest summed into one series labelled `(other)`, so a
 * panel stays readable however many tenants or adapters there are. The parentheses keep `(other)` from colliding
 * with a real name: tenant and adapter names cannot contain them.
 */
export function topWithOther(n: number, label: string, inner: string): string {
  const byLabel = `sum by (${label}) (${inner})`;
  return `topk(${n}, ${byLabel}) or label_replace(sum(${inner}) - sum(topk(${n}, ${byLabel})), "${label}", "(other)", "", "")`;
}

/** The three quantiles every latency panel shows. */
export function latencyQuantiles(histogram: string, selector: string): PanelSpec['queries'] {
  return [0.5, 0.9, 0.99].map((q) => ({ expr: quantile(q, histogram, selector), legend: `p${Math.round(q * 100)}` }));
}
