from django.urls import path
from signups import views

urlpatterns = [
    path("users", views.create_user),
    path("users/<str:user_id>", views.get_user),
    path("signups", views.create_signup),
    path("signups/<int:pk>", views.get_signup),
]
