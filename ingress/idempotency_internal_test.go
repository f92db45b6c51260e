package ingress

import (
	"testing"

	"github.com/eventfn/eventfn/handlers"
)

// TestAnOrdersDigestStaysTheSame: a key is kept as long as its order, so
// the digest an order was stored with must be what every later release
// computes for it, or the same order sent again is refused. The digest of
// a fixed order is pinned here. (The first version quoted strings with %q,
// whose escapes follow the Go release's Unicode tables: a SKU with a
// character newer than them, valid today, would digest differently after
// an upgrade.)
func TestAnOrdersDigestStaysTheSame(t *testing.T) {
	req := OrderRequest{CustomerEmail: "zoë@example.com", Items: []handlers.OrderItem{
		{SKU: "SKU-\U0001FAE9", Quantity: 2, PriceCents: 1250},
		{SKU: `A";"B`, Quantity: 1, PriceCents: 0},
	}}
	const pinned = "a81c6d09d8aed73be4ba3de0afb83102dcad220675697fd079ac18044b758e22"
	if got := orderDigest(req); got != pinned {
		t.Fatalf("orderDigest = %s, want %s: orders stored with the old digest would be refused when sent again", got, pinned)
	}
}

// TestDifferentOrdersHaveDifferentDigests: orders that differ anywhere,
// also where one's strings run into the next field, digest differently.
func TestDifferentOrdersHaveDifferentDigests(t *testing.T) {
	item := func(sku string, q, p int64) handlers.OrderItem {
		return handlers.OrderItem{SKU: sku, Quantity: q, PriceCents: p}
	}
	orders := map[string]OrderRequest{
		"one item":                   {CustomerEmail: "a@example.com", Items: []handlers.OrderItem{item("AB", 1, 1)}},
		"another quantity":           {CustomerEmail: "a@example.com", Items: []handlers.OrderItem{item("AB", 2, 1)}},
		"another price":              {CustomerEmail: "a@example.com", Items: []handlers.OrderItem{item("AB", 1, 2)}},
		"another address":            {CustomerEmail: "b@example.com", Items: []handlers.OrderItem{item("AB", 1, 1)}},
		"the SKU split in two items": {CustomerEmail: "a@example.com", Items: []handlers.OrderItem{item("A", 1, 1), item("B", 1, 1)}},
		"a SKU that spells an item":  {CustomerEmail: "a@example.com", Items: []handlers.OrderItem{item("AB1,1;1:C", 1, 1)}},
		"that item apart":            {CustomerEmail: "a@example.com", Items: []handlers.OrderItem{item("AB", 1, 1), item("C", 1, 1)}},
		"the items swapped":          {CustomerEmail: "a@example.com", Items: []handlers.OrderItem{item("C", 1, 1), item("AB", 1, 1)}},
		"a digit moved to the price": {CustomerEmail: "a@example.com", Items: []handlers.OrderItem{item("AB", 11, 1)}},
		"and back to the quantity":   {CustomerEmail: "a@example.com", Items: []handlers.OrderItem{item("AB", 1, 11)}},
	}
	seen := map[string]string{}
	for name, req := range orders {
		d := orderDigest(req)
		if other, ok := seen[d]; ok {
			t.Errorf("%q and %q have one digest", name, other)
		}
		seen[d] = name
	}
}
