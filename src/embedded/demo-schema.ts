/** The demo database the embedded default starts with: a small shop. */
export const DEMO_USER = 'demo';
export const DEMO_PASSWORD = 'demo';
export const DEMO_DATABASE = 'demo';

export const DEMO_SCHEMA_SQL = `
CREATE TABLE customers (
  id         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name       text NOT NULL,
  email      text NOT NULL UNIQUE,
  country    text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE products (
  id    integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name  text NOT NULL,
  price numeric(10, 2) NOT NULL,
  stock integer NOT NULL
);
CREATE TABLE orders (
  id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  customer_id integer NOT NULL REFERENCES customers,
  ordered_at  timestamptz NOT NULL,
  status      text NOT NULL
);
CREATE TABLE order_items (
  order_id   integer NOT NULL REFERENCES orders,
  product_id integer NOT NULL REFERENCES products,
  quantity   integer NOT NULL,
  PRIMARY KEY (order_id, product_id)
);
INSERT INTO customers (name, email, country, created_at)
SELECT 'Customer ' || i, 'customer' || i || '@example.com',
       (ARRAY['DE', 'FR', 'US', 'JP', 'BR'])[1 + i % 5],
       timestamptz '2024-01-01' + i * interval '7 hours'
FROM generate_series(1, 200) AS i;
INSERT INTO products (name, price, stock)
SELECT 'Product ' || i, round((5 + (i * 37) % 200)::numeric + 0.99, 2), (i * 13) % 100
FROM generate_series(1, 50) AS i;
INSERT INTO orders (customer_id, ordered_at, status)
SELECT 1 + (i * 7) % 200, timestamptz '2024-02-01' + i * interval '3 hours',
       (ARRAY['pending', 'shipped', 'delivered', 'cancelled'])[1 + i % 4]
FROM generate_series(1, 1000) AS i;
INSERT INTO order_items (order_id, product_id, quantity)
SELECT o, 1 + (o * k) % 50, 1 + (o + k) % 5
FROM generate_series(1, 1000) AS o, generate_series(1, 3) AS k
ON CONFLICT DO NOTHING;
CREATE VIEW order_totals AS
SELECT o.id AS order_id, c.name AS customer, sum(p.price * i.quantity) AS total
FROM orders o JOIN customers c ON c.id = o.customer_id
JOIN order_items i ON i.order_id = o.id JOIN products p ON p.id = i.product_id
GROUP BY o.id, c.name;
`;
