/** Every PromQL expression the shipped dashboards and alert rules run, with where it comes from and which process it reads. */
import { alertRuleGroups } from './alerts.ts';
import { shippedDashboards, type ScrapeTarget } from './files.ts';

export interface ShippedQuery {
  /** Dashboard and panel, variable or alert, for messages. */
  where: string;
  kind: 'panel' | 'variable' | 'alert';
  target: ScrapeTarget;
  expr: string;
}

/**
 * Grafana's `label_values(selector, label)` is not PromQL; `group by (label) (selector)` asks Prometheus the same
 * question, so variables are checked like every other query.
 */
function variableAsPromql(definition: string): string {
  const match = /^label_values\((.+), (\w+)\)$/.exec(definition);
  if (!match) throw new Error(`unexpected variable query ${definition}`);
  return `group by (${match[2]}) (${match[1]})`;
}

export function shippedQueries(): ShippedQuery[] {
  const queries: ShippedQuery[] = [];
  for (const { file, target, dashboard } of shippedDashboards()) {
    for (const variable of dashboard.templating.list) {
      if (variable.type !== 'query' || variable.definition === undefined) continue;
      queries.push({ where: `${file} variable ${variable.name}`, kind: 'variable', target, expr: variableAsPromql(variable.definition) });
    }
    for (const panel of dashboard.panels) {
      for (const query of panel.targets) {
        queries.push({ where: `${file} "${panel.title}" ${query.refId}`, kind: 'panel', target, expr: query.expr });
      }
    }
  }
  for (const group of alertRuleGroups()) {
    for (const rule of group.rules) queries.push({ where: `alert ${rule.alert}`, kind: 'alert', target: 'gateway', expr: rule.expr });
  }
  return queries;
}
