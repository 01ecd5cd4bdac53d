-- Monthly revenue by country, excluding test orders.
WITH paid AS (
    SELECT o.id, o.country, o.total_cents, date_trunc('month', o.paid_at) AS month
    FROM orders o
    WHERE o.status = 'paid'
      AND o.paid_at >= DATE '2025-01-01'
      AND o.email NOT LIKE '%@example.com'
)
SELECT month, country, count(*) AS orders, sum(total_cents) / 100.0 AS revenue
FROM paid
GROUP BY month, country
ORDER BY month, revenue DESC;

-- Drop the previous rules table once the migration 0042 has run.
DROP TABLE IF EXISTS pricing_rules_old;
