/** The training dashboard, over the trainer sidecar's own series (`trainer_*`, scraped from its TRAINER_PORT). */
import { dashboard, INSTANCE_SELECTOR, panel, quantile, rate, type GrafanaDashboard } from './grafana.ts';

export function trainingDashboard(): GrafanaDashboard {
  return dashboard({
    uid: 'peft-gateway-training',
    title: 'PEFT gateway / Training',
    description: 'Fine-tuning jobs of the trainer sidecar: jobs by status, throughput, loss and progress.',
    tags: ['peft-gateway', 'training'],
    variableSource: { metric: 'trainer_tokens_per_second', hasModelName: false },
    items: [
      panel({
        title: 'Jobs by status',
        description: 'Fine-tuning jobs on disk in each status (validating_files, queued, running, succeeded, failed, cancelled).',
        unit: 'short',
        stacked: true,
        queries: [{ expr: `sum by (status) (trainer_jobs{${INSTANCE_SELECTOR}})`, legend: '{{status}}' }],
      }),
      panel({
        title: 'Training throughput',
        description: 'Tokens per second of the running job, as the trainer reports it, and as the rate of its token counter.',
        unit: 'suffix:tok/s',
        queries: [
          { expr: `sum by (instance) (trainer_tokens_per_second{${INSTANCE_SELECTOR}})`, legend: '{{instance}} reported' },
          { expr: `sum by (instance) (${rate('trainer_trained_tokens_total', INSTANCE_SELECTOR)})`, legend: '{{instance}} counted' },
        ],
      }),
      panel({
        title: 'Loss',
        description: 'Latest training loss and validation loss of the running job.',
        unit: 'none',
        width: 8,
        queries: [
          { expr: `max by (instance) (trainer_loss{${INSTANCE_SELECTOR}})`, legend: '{{instance}} train' },
          { expr: `max by (instance) (trainer_valid_loss{${INSTANCE_SELECTOR}})`, legend: '{{instance}} validation' },
        ],
      }),
      panel({
        title: 'Progress of the running job',
        description: 'Optimizer steps done over the job\'s total.',
        unit: 'percentunit',
        width: 8,
        min: 0,
        max: 1,
        queries: [
          {
            // 0 while idle: the trainer resets both gauges to 0, and clamp_min avoids dividing by it.
            expr: `max by (instance) (trainer_step{${INSTANCE_SELECTOR}}) / clamp_min(max by (instance) (trainer_total_steps{${INSTANCE_SELECTOR}}), 1)`,
            legend: '{{instance}}',
          },
        ],
      }),
      panel({
        title: 'Job duration',
        description: 'Median and 90th percentile duration of the jobs that finished in the dashboard\'s time range, by final status.',
        unit: 's',
        width: 8,
        type: 'bargauge',
        // Jobs finish rarely: over a rate interval most points would have none, so this reads the whole range.
        queries: [0.5, 0.9].map((q) => ({
          expr: quantile(q, 'trainer_job_duration_seconds', INSTANCE_SELECTOR, ['status'], '$__range'),
          legend: `{{status}} p${q * 100}`,
        })),
      }),
    ],
  });
}
