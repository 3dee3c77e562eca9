import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { alertRuleGroups } from '../src/observability/dashboards/alerts.ts';
import {
  DASHBOARDS_CONFIGMAP_FILE,
  generatedFiles,
  PROMETHEUS_RULE_FILE,
  RULES_FILE,
  shippedDashboards,
} from '../src/observability/dashboards/files.ts';
import { shippedQueries } from '../src/observability/dashboards/queries.ts';
import { parsePromql, withVariablesResolved } from './support/promql.ts';
import { REPO_ROOT } from './support/models.ts';

const committed = (path: string) => readFileSync(join(REPO_ROOT, path), 'utf8');

describe('generated dashboards and alert rules', () => {
  it('the committed files are exactly what npm run dashboards generates', () => {
    const files = generatedFiles();
    assert.ok(files.size >= 6);
    for (const [path, content] of files) assert.equal(committed(path), content, `${path} differs from the generator: run npm run dashboards`);
  });

  it('every panel has a unit and a description and reads the datasource variable', () => {
    for (const { file, dashboard } of shippedDashboards()) {
      const variables = dashboard.templating.list.map((variable) => variable.name);
      assert.equal(dashboard.templating.list[0].type, 'datasource', `${file}: a datasource variable comes first`);
      assert.ok(variables.includes('instance'), `${file}: an instance variable`);
      assert.ok(dashboard.panels.length >= 5, `${file}: ${dashboard.panels.length} panels`);
      for (const panel of dashboard.panels) {
        const where = `${file} "${panel.title}"`;
        assert.ok(panel.description.length > 20, `${where}: description`);
        assert.match(String(panel.fieldConfig.defaults.unit), /^(reqps|ops|s|short|bytes|percentunit|none|string|suffix:.+)$/, `${where}: unit`);
        for (const source of [panel.datasource, ...panel.targets.map((target) => target.datasource)]) {
          assert.deepEqual(source, { type: 'prometheus', uid: '${datasource}' }, `${where}: no fixed datasource uid`);
        }
        for (const target of panel.targets) {
          // Charts over time use $__rate_interval; a single figure for the whole range may read $__range.
          const ranges = panel.type === 'timeseries' ? ['$__rate_interval'] : ['$__rate_interval', '$__range'];
          for (const [, range] of target.expr.matchAll(/\[([^\]]+)\]/g)) assert.ok(ranges.includes(range), `${where}: range ${range}`);
          assert.match(target.expr, /instance=~"\$instance"/, `${where}: filters on $instance`);
          // vllm:lora_requests_info is the one vllm: series without model_name, as in vLLM.
          if (/vllm:(?!lora_requests_info)/.test(target.expr)) assert.match(target.expr, /model_name=~"\$model_name"/, `${where}: filters on $model_name`);
        }
      }
    }
    const overview = shippedDashboards()[0].dashboard;
    assert.ok(overview.templating.list.some((variable) => variable.name === 'model_name'));
  });

  it('ships the dashboards in a ConfigMap the Grafana sidecar picks up', () => {
    const configMap = parseYaml(committed(DASHBOARDS_CONFIGMAP_FILE));
    assert.equal(configMap.kind, 'ConfigMap');
    assert.equal(configMap.metadata.labels.grafana_dashboard, '1');
    const dashboards = shippedDashboards();
    assert.deepEqual(Object.keys(configMap.data).sort(), dashboards.map(({ file }) => file).sort());
    for (const { file, dashboard } of dashboards) assert.deepEqual(JSON.parse(configMap.data[file]), dashboard);
  });

  it('ships the same alert rules as a plain rules file and as a PrometheusRule', () => {
    const plain = parseYaml(committed(RULES_FILE));
    const rule = parseYaml(committed(PROMETHEUS_RULE_FILE));
    assert.equal(rule.kind, 'PrometheusRule');
    assert.equal(rule.apiVersion, 'monitoring.coreos.com/v1');
    assert.deepEqual(rule.spec.groups, plain.groups);
    assert.deepEqual(plain.groups, alertRuleGroups());
    const alerts = plain.groups.flatMap((group: { rules: { alert: string }[] }) => group.rules.map((r) => r.alert));
    for (const needed of ['QueueBuildingUp', 'TtftP99AboveSlo', 'ErrorRatioHigh', 'KvCacheSaturated', 'AdapterLoadsSlow', 'AdapterLoadsFailing', 'EngineDown', 'TargetAbsent']) {
      assert.ok(alerts.includes(`PeftGateway${needed}`), `alert ${needed}`);
    }
  });

  it('every expression parses as PromQL and selects series by name', () => {
    const queries = shippedQueries();
    assert.ok(queries.length > 40, `${queries.length} queries`);
    for (const query of queries) {
      const parsed = parsePromql(withVariablesResolved(query.expr, '1m'));
      assert.ok(parsed.selectors.length > 0, `${query.where}: selects nothing`);
    }
  });

  it('the PromQL reader rejects what Prometheus would reject', () => {
    assert.throws(() => parsePromql('sum(rate(vllm:prompt_tokens_total{model_name=~"x"}[5m])'), /syntax error/);
    assert.throws(() => parsePromql('rate(gateway_requests_total{status=}[1m])'), /syntax error/);
    const parsed = parsePromql('sum by (tier) (rate(gateway_adapter_cache_hits_total{instance=~"a", tier!="slot"}[1m]))');
    assert.deepEqual(parsed.selectors, [
      { metric: 'gateway_adapter_cache_hits_total', matchers: [{ label: 'instance', op: '=~', value: 'a' }, { label: 'tier', op: '!=', value: 'slot' }] },
    ]);
    assert.deepEqual(parsed.groupings.map((g) => g.labels), [['tier']]);
  });
});
