#!/usr/bin/env bash
# Run shell lines on EC2 hosts through SSM Run Command (AWS-RunShellScript) and wait for them.
#
#   ssm-run.sh TARGETS COMMENT LINE...
#     TARGETS  Key=tag:app,Values=imgclf | Key=InstanceIds,Values=i-1,i-2
#
# One host at a time, stopping at the first failure (--max-concurrency 1 --max-errors 0). Prints
# every host's status and output, writes `succeeded=<instance ids, comma-separated>` to
# $GITHUB_OUTPUT when that is set (the hosts a rollback has to cover), and exits non-zero unless
# at least one host was targeted and every targeted host succeeded.
set -euo pipefail

if (($# < 3)); then
  echo "usage: $0 TARGETS COMMENT LINE..." >&2
  exit 2
fi
targets=$1
comment=$2
shift 2
# Throttled or flaky AWS calls are retried by the CLI itself (standard mode, with backoff).
export AWS_RETRY_MODE="${AWS_RETRY_MODE:-standard}" AWS_MAX_ATTEMPTS="${AWS_MAX_ATTEMPTS:-10}"

parameters=$(jq -cn '{commands: $ARGS.positional, executionTimeout: ["1800"]}' --args "$@")
command_id=$(aws ssm send-command \
  --document-name AWS-RunShellScript \
  --targets "$targets" \
  --max-concurrency 1 \
  --max-errors 0 \
  --comment "${comment:0:100}" \
  --parameters "$parameters" \
  --output json | jq -r .Command.CommandId)
echo "SSM command $command_id on $targets"

# Poll the command, not one invocation: `aws ssm wait command-executed` takes a single instance
# id, and a tag can match several hosts.
# A failed poll is not a failed release: keep polling (the hosts go on either way), so that the
# hosts that switched are always reported for the rollback step.
failed_polls=0 command='{"TargetCount": 0}' status=Unknown
while :; do
  if ! command=$(aws ssm list-commands --command-id "$command_id" --output json |
    jq -ce '.Commands[0]'); then
    ((++failed_polls < 30)) || { echo "::error::cannot poll SSM command $command_id" >&2; break; }
    sleep 10
    continue
  fi
  failed_polls=0
  status=$(jq -r .Status <<<"$command")
  case $status in
    Pending | InProgress | Cancelling) sleep 10 ;;
    *) break ;;
  esac
done

invocations=$(aws ssm list-command-invocations --command-id "$command_id" --details --output json)
jq -r '.CommandInvocations[] | "--- \(.InstanceId): \(.Status)\n\(.CommandPlugins[0].Output // "")"' \
  <<<"$invocations"
succeeded=$(jq -r '[.CommandInvocations[] | select(.Status == "Success") | .InstanceId] | join(",")' \
  <<<"$invocations")
if [[ -n ${GITHUB_OUTPUT:-} ]]; then
  echo "succeeded=$succeeded" >>"$GITHUB_OUTPUT"
fi

targeted=$(jq -r .TargetCount <<<"$command")
ok=$(jq -r '[.CommandInvocations[] | select(.Status == "Success")] | length' <<<"$invocations")
echo "SSM command $command_id: $status, $ok of $targeted host(s) succeeded"
if [[ $status != Success || $targeted -eq 0 || $ok -ne $targeted ]]; then
  echo "::error::SSM command $command_id failed on the hosts ($status, $ok of $targeted succeeded)"
  exit 1
fi
