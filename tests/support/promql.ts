/**
 * Reads PromQL the way Prometheus's own UI does, with `@prometheus-io/lezer-promql`: which series an expression
 * selects, with which label matchers, and which labels its aggregations group by.
 */
import { parser } from '@prometheus-io/lezer-promql';
import type { SyntaxNode } from '@lezer/common';

export interface LabelMatcher {
  label: string;
  op: string;
  value: string;
}

export interface SeriesSelector {
  metric: string;
  matchers: LabelMatcher[];
}

export interface ParsedPromql {
  selectors: SeriesSelector[];
  /** For each `by (...)` aggregation: its labels and the selectors it aggregates over. */
  groupings: { labels: string[]; selectors: SeriesSelector[] }[];
}

/** Grafana's variables, replaced as Grafana would before the query reaches Prometheus ("All" selected). */
export function withVariablesResolved(expr: string, rateInterval: string, range = '1h'): string {
  return expr
    .replaceAll('$__rate_interval', rateInterval)
    .replaceAll('$__range', range)
    .replaceAll(/\$(model_name|instance)\b/g, '.*');
}

function text(expr: string, node: SyntaxNode): string {
  return expr.slice(node.from, node.to);
}

function stringValue(literal: string): string {
  // PromQL strings are Go-quoted; JSON reads the double-quoted ones the dashboards use.
  return JSON.parse(literal.startsWith("'") ? `"${literal.slice(1, -1)}"` : literal) as string;
}

function selectorOf(expr: string, node: SyntaxNode): SeriesSelector {
  const metric = node.getChild('Identifier');
  const matchers: LabelMatcher[] = [];
  for (const matcher of node.getChild('LabelMatchers')?.getChildren('UnquotedLabelMatcher') ?? []) {
    matchers.push({
      label: text(expr, matcher.getChild('LabelName')!),
      op: text(expr, matcher.getChild('MatchOp')!),
      value: stringValue(text(expr, matcher.getChild('StringLiteral')!)),
    });
  }
  if (!metric) throw new Error(`a selector without a metric name: ${text(expr, node)}`);
  return { metric: text(expr, metric), matchers };
}

function selectorsUnder(expr: string, node: SyntaxNode): SeriesSelector[] {
  const found: SeriesSelector[] = [];
  const cursor = node.cursor();
  do {
    if (cursor.name === 'VectorSelector') found.push(selectorOf(expr, cursor.node));
  } while (cursor.next() && cursor.from < node.to);
  return found;
}

/** Throws, naming the position, when the expression does not parse. */
export function parsePromql(expr: string): ParsedPromql {
  const tree = parser.parse(expr);
  tree.iterate({
    enter(ref) {
      if (ref.type.isError) throw new Error(`PromQL syntax error at ${ref.from}: ${expr.slice(0, ref.from)}⟨here⟩${expr.slice(ref.from)}`);
    },
  });
  const selectors: SeriesSelector[] = [];
  const groupings: ParsedPromql['groupings'] = [];
  tree.iterate({
    enter(ref) {
      if (ref.name === 'VectorSelector') selectors.push(selectorOf(expr, ref.node));
      if (ref.name === 'AggregateExpr') {
        const modifier = ref.node.getChild('AggregateModifier');
        if (modifier?.getChild('By')) {
          const labels = modifier.getChild('GroupingLabels')!.getChildren('LabelName').map((label) => text(expr, label));
          groupings.push({ labels, selectors: selectorsUnder(expr, ref.node.getChild('FunctionCallBody')!) });
        }
      }
    },
  });
  return { selectors, groupings };
}
