-- held: the nodes an agent was taken over from, each with the last epoch it held
-- ({"n1": 1}), so a node that comes back and claims the agent again can be told
-- that its claim is stale rather than only who owns the agent.
ALTER TABLE cluster_owners ADD COLUMN held JSONB NOT NULL DEFAULT '{}'::jsonb;
