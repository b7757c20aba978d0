package parcel

import (
	"github.com/brianvoe/gofakeit/v7"
	"github.com/google/uuid"
)

// Faker makes realistic fake orders: a person's name, a street address and
// a fresh UUID. It is safe for concurrent use.
type Faker struct{ f *gofakeit.Faker }

// NewFaker returns a Faker; seed 0 draws a random seed.
func NewFaker(seed uint64) *Faker { return &Faker{f: gofakeit.New(seed)} }

// Order returns a new order for store.
func (f *Faker) Order(store string) Parcel {
	return Parcel{
		Store:    store,
		OrderID:  uuid.NewString(),
		Customer: f.f.Name(),
		Address:  f.f.Address().Address,
	}
}
